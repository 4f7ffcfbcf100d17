"""Test harness: real servers (control plane, PostgreSQL, KMS, mail) started as local processes."""
