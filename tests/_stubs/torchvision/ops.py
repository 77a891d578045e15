"""The three torchvision.ops functions onnx2torch names; none is available in the stub."""


def _missing(name):
    def fn(*args, **kwargs):
        raise NotImplementedError(f"torchvision.ops.{name} is not available (test stub of torchvision)")
    fn.__name__ = name
    return fn


nms = _missing("nms")
roi_align = _missing("roi_align")
box_convert = _missing("box_convert")
