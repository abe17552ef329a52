"""config.toml → frozen, validated dataclasses (docs/configuration.md)."""
