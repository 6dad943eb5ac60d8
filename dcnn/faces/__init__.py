"""dlib's face pipeline: the MMOD detector (``.dat`` reader, image pyramid, detector), 5 landmarks, aligned face
chips, the ResNet descriptor, jitter, and identities."""
