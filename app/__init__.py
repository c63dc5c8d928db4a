"""The Dash web app and its JSON API. Imports no torch: models run in the worker."""
