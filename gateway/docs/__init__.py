"""What the server says about itself: OpenAPI generated from the manifests, the /docs page, and example
requests."""
