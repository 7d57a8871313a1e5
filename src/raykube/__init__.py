"""raykube: train and serve PyTorch models on Kubernetes from one TrainingRun resource."""

__version__ = "0.1.0"
