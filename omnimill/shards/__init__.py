"""Storage formats: corpus readers, the label store, token stores and shards. No models here."""
