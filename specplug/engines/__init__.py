"""Engine adapters. Only modules below this package import an engine, and only lazily."""
