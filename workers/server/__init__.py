"""The trace server (``tracer serve``): the viewer's pages and a read-only JSON API over a store.

``app.make_app`` builds the Starlette application (routes, the API key, security headers, the
viewer's static files); ``api`` holds the JSON endpoints, which read through the store
interface (``workers.store.base.StoreReader``). Its dependencies (starlette, uvicorn) come with
the ``server`` extra; ``import tracer`` never loads them.
"""
