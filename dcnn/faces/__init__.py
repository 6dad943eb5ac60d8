"""dlib's MMOD face detector: the ``.dat`` reader, the image pyramid and the detector."""
