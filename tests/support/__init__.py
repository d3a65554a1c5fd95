"""What the tests share: servers, mails and helpers (no tests here)."""
