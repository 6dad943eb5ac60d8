"""dlib's face pipeline in dcnn: landmarks, aligned face chips, descriptors and identities."""
