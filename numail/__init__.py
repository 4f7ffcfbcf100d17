"""NuMail core library: API models, crypto, keys, redaction and data access; no Kubernetes."""
