"""What torch and MLflow alone cost a tracked run, before any of the project's own work.

Does only what the libraries need for a run that is tracked as ``python -m mnist_bench`` tracks
it, with none of the project's own work (no Hydra, no data, no training, no figures): import
torch and MLflow, build an Adam optimizer (which imports torch's compiler stack), open the SQLite
store ``./mlflow.db``, and log a one-layer model in MLflow's pt2 format with explicit pip
requirements. The collector is paused as the job pauses it (``mnist_bench/gc_control.py``).
``scripts/time_commands.py`` times it beside the real command.
"""

import gc

gc.disable()
import mlflow  # noqa: E402
import mlflow.pytorch  # noqa: E402
import torch  # noqa: E402

model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
torch.optim.Adam(model.parameters())
mlflow.set_tracking_uri("sqlite:///mlflow.db")
mlflow.set_experiment("library_floor")
example = torch.rand(2, 1, 28, 28).numpy()
with mlflow.start_run():
    mlflow.pytorch.log_model(model, name="model", input_example=example,
                             pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])
gc.freeze()
