"""Operations: metrics and log redaction."""
