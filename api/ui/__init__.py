"""The dashboard: server-rendered pages under ``/ui`` (Jinja2 templates, a little plain JS, no build).

``api.ui.install.install_ui(app, settings)`` adds it to the app. ``session``: how a team key
becomes a signed-cookie session, CSRF tokens; ``views``: the pages; ``resources``: JSON, images
and downloads the pages fetch; ``forms``: the job form; ``render``: templates and page headers.
"""
