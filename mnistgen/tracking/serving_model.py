"""The code MLflow's models-from-code loads for `draw-mnist-cgan`, so the registered model
holds no pickled `python_model`: this names the class, the logged checkpoint (loaded with
torch.load(weights_only=True)) holds the weights. Not imported by the pipeline."""
import mlflow.models

from mnistgen.tracking.serving import DigitDrawer

mlflow.models.set_model(DigitDrawer())
