"""The database: `engine` (Database: engines, sessions, pragmas, migrations), `models` (the
tables and their states) and `migrations/` (Alembic)."""
