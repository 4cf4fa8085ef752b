"""Face models: MTCNN detection, 5-point alignment and embedding networks."""
