"""The Beam-free core, between models/ (networks, weights) and pipeline/ (Beam): what is
computed about faces, free of Beam. Imports models/, never pipeline/.

The hot path from decoded pixels to faces (faces.py) and face quality (quality.py).
"""
