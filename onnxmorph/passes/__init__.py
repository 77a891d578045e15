"""One morph per file. Each exposes `<verb>_model(model, **options) -> (child, report)`, editing the
ModelProto it is given (the API hands it a private copy) and returning a report dataclass with `lines()`."""
