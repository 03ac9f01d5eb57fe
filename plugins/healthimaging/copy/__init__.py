"""Copy semantics: what one CopyImageSet request means, how it is planned, sent, reconciled and
checked (plan, submission, copiableAttributes, metadata consistency, image-set states)."""
