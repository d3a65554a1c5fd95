"""The issue's content: feeds read (sources) and cleaned (sanitize), stories stored (repository),
chosen and grouped (digest), and rendered to HTML and text (render)."""
