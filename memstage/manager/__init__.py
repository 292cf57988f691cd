"""The manager: benefactor registry, striping maps, namespaces, committed versions and the chunk index."""
