"""The numail Kopf operator: reconciles Workspaces, Mailboxes and keys into Kubernetes objects."""
