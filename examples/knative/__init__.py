"""The payment example on Knative Eventing (see README.md here)."""
