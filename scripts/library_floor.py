"""What torch and MLflow alone cost a tracked run, before any of the project's own work.

Does only what the libraries need for a run that is tracked as ``python -m mnist_bench`` tracks
it, with none of the project's own work (no Hydra, no data, no training, no figures): import
torch and MLflow, build an Adam optimizer (which imports torch's compiler stack), open the SQLite
store ``./mlflow.db``, and log a one-layer model in MLflow's pt2 format with explicit pip
requirements. The collector is paused as the job pauses it (``mnist_bench/gc_control.py``), and
the process ends as the commands end, without the interpreter's teardown
(``mnist_bench/process_end.py``). ``scripts/time_commands.py`` times it beside the real command.
"""

import gc

gc.disable()
# isort: off
from mnist_bench import process_end  # noqa: E402  (first: its exit handler runs last)
import mlflow  # noqa: E402
import mlflow.pytorch  # noqa: E402
import torch  # noqa: E402
# isort: on


def log_a_model() -> None:
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(28 * 28, 10))
    torch.optim.Adam(model.parameters())
    mlflow.set_tracking_uri("sqlite:///mlflow.db")
    mlflow.set_experiment("library_floor")
    example = torch.rand(2, 1, 28, 28).numpy()
    with mlflow.start_run():
        mlflow.pytorch.log_model(model, name="model", input_example=example,
                                 pip_requirements=[f"torch=={torch.__version__.split('+')[0]}"])


if __name__ == "__main__":
    process_end.run_command_then_exit(log_a_model)
