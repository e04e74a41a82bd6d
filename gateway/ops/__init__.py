"""Operations: metrics, logs, Redis keys, health."""
