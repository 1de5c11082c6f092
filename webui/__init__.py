"""The localhost web application: the only package that knows HTTP, HTML and JSON."""
