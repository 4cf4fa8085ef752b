"""The Beam-free core: decoded pixels -> faces (faces.py), face quality (quality.py), and
LFW-style datasets through that same path (lfw.py). Imports models/, never pipeline/."""
