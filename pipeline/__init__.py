"""facegroup: a Beam pipeline that groups each user's photo library into people."""
