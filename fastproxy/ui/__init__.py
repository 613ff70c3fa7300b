"""The dashboard's files (index.html, dashboard.css, dashboard.js), served by the admin API
at `/` and `/ui/` (fastproxy.admin). Hand-written, no dependencies: the page works offline
and costs the proxy nothing until someone opens it."""
