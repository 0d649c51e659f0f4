"""The dashboard: a read-only web UI of every endpoint, served from the status branch.

source.py   where the pages' data comes from (the StatusSource interface; the status branch)
data.py     PURE: status documents and desired state -> the JSON the API serves and pages show
render.py   PURE: that JSON -> HTML, every value escaped by default
server.py   the aiohttp application (pages, JSON API, server-sent events, security headers)
static/     the stylesheet and the small script, shipped in the package (no CDN)
"""
