"""NuMail's send and reply workers: they import the core library only, never the operator."""
