"""TorchServe's REST APIs: inference (8080), management (8081) and metrics (8082)."""
