"""The API version reported by /healthz and the OpenAPI spec."""

API_VERSION = "0.1.0"
