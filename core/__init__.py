"""The Beam-free core, between models/ (networks, weights) and pipeline/ (Beam): what is
computed about faces, free of Beam. Imports models/, never pipeline/.

Face quality (quality.py).
"""
