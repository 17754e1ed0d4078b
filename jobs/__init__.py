"""The admin jobs the CLI runs: gc-storage, generate-variants."""
