"""A Triton model repository -> how Triton serves it with no code (reconciler.nocode.triton).

Repositories are laid out as Azure ML's Triton samples and Triton's docs lay them out
(`MODEL/config.pbtxt`, `MODEL/1/model.onnx`); checks name the file (and line) of the first
problem; an ONNX model's config is served rewritten for the Python backend, everything the
backend does not care about kept as written.
"""

from __future__ import annotations

import ast

import pytest

from reconciler.model.specs import ModelSpec
from reconciler.nocode.pbtxt import parse
from reconciler.nocode.triton import (
    PACKAGES,
    TritonModelError,
    TritonRepository,
    image_entries,
    onnx_model_script,
    read_repository,
    server_command,
    triton_environment,
)

ROOT = "models/triton"
ONNX_CONFIG = """\
name: "densenet"
platform: "onnxruntime_onnx"   # Triton's ONNX Runtime backend
max_batch_size: 8
input [ { name: "data_0", data_type: TYPE_FP32, dims: [ 3, 224, 224 ] } ]
output [ { name: "fc6_1", data_type: TYPE_FP32, dims: [ 1000 ], label_filename: "labels.txt" } ]
dynamic_batching { }
"""
PYTHON_CONFIG = 'backend: "python"\ninput [ { name: "x", data_type: TYPE_FP32, dims: [1] } ]\n'


def repo(**files: str) -> dict[str, bytes]:
    """Files of ROOT ('__' for '/', '_dot_' for '.'); an empty text leaves a file out."""
    base = {
        "densenet/config.pbtxt": ONNX_CONFIG,
        "densenet/1/model.onnx": "onnx bytes",
        "densenet/labels.txt": "cat\ndog\n",
    }
    base.update({k.replace("__", "/").replace("_dot_", "."): v for k, v in files.items()})
    return {f"{ROOT}/{path}": text.encode() for path, text in base.items() if text}


def read(files: dict[str, bytes], folder: str = ROOT) -> TritonRepository:
    return read_repository(folder, files, files.get)


def refused(files: dict[str, bytes], folder: str = ROOT) -> TritonModelError:
    with pytest.raises(TritonModelError) as caught:
        read(files, folder)
    return caught.value


def test_an_onnx_model_is_served_by_the_python_backend_with_its_tensors_kept() -> None:
    (model,) = read(repo()).models
    assert (model.name, model.kind, model.versions) == ("densenet", "onnx", ("1",))
    assert model.served_config is not None
    served = model.served_config.decode()
    fields = {f.name: f for f in parse(served)}
    assert "platform" not in fields and fields["backend"].first() == "python"
    assert fields["max_batch_size"].first() == "8" and "dynamic_batching" in fields
    # Inputs and outputs as written, comments and all: Triton checks requests against them.
    assert 'input [ { name: "data_0", data_type: TYPE_FP32, dims: [ 3, 224, 224 ] } ]' in served
    assert 'label_filename: "labels.txt"' in served
    (parameter,) = fields["parameters"].messages
    assert [f.first() for f in parameter] == ["reconciler_onnx_model_file", None]
    assert parameter[1].messages[0][0].first() == "model.onnx"


@pytest.mark.parametrize(
    "says_onnx",
    ['backend: "onnxruntime"', 'platform: "onnxruntime_onnx"', "# nothing: model.onnx says it"],
)
def test_every_way_of_saying_onnx_runtime_is_served(says_onnx: str) -> None:
    config = ONNX_CONFIG.replace('platform: "onnxruntime_onnx"', says_onnx)
    (model,) = read(repo(densenet__config_dot_pbtxt=config)).models
    assert model.kind == "onnx"


def test_default_model_filename_names_the_onnx_file_in_every_version() -> None:
    config = ONNX_CONFIG + 'default_model_filename: "dense.onnx"\n'
    files = repo(
        densenet__config_dot_pbtxt=config,
        densenet__1__model_dot_onnx="",
        densenet__1__dense_dot_onnx="x",
        densenet__2__dense_dot_onnx="x",
    )
    (model,) = read(files).models
    assert model.versions == ("1", "2") and model.served_config is not None
    served = model.served_config.decode()
    assert "default_model_filename" not in served and 'string_value: "dense.onnx"' in served
    del files[f"{ROOT}/densenet/2/dense.onnx"]
    files[f"{ROOT}/densenet/2/model.onnx"] = b"x"
    error = refused(files)
    assert error.file == f"{ROOT}/densenet/2"
    assert "holds no dense.onnx (config.pbtxt's default_model_filename)" in error.message


@pytest.mark.parametrize(
    ("line", "shown"),
    [
        ('platform: "tensorrt_plan"', "platform 'tensorrt_plan' (TensorRT)"),
        ('backend: "pytorch"', "backend 'pytorch' (PyTorch)"),
        ('platform: "tensorflow_savedmodel"', "platform 'tensorflow_savedmodel' (TensorFlow)"),
        ('backend: "openvino"', "backend 'openvino' (OpenVINO)"),
        ('backend: "my_custom_backend"', "backend 'my_custom_backend'"),
    ],
)
def test_other_backends_are_refused_naming_the_file_line_and_backend(line: str, shown: str) -> None:
    config = ONNX_CONFIG.replace(
        'platform: "onnxruntime_onnx"   # Triton\'s ONNX Runtime backend', line
    )
    error = refused(repo(densenet__config_dot_pbtxt=config))
    assert (error.file, error.line) == (f"{ROOT}/densenet/config.pbtxt", 2)
    assert error.message.startswith(f"{shown} is not served here")
    assert "has only its Python backend" in error.message and "custom container" in error.message


def test_a_model_file_of_another_backend_is_refused_when_the_config_names_none() -> None:
    config = ONNX_CONFIG.replace('platform: "onnxruntime_onnx"', "")
    files = repo(densenet__config_dot_pbtxt=config, densenet__1__model_dot_onnx="")
    files[f"{ROOT}/densenet/1/model.plan"] = b"engine"
    error = refused(files)
    assert error.file == f"{ROOT}/densenet/config.pbtxt"
    assert "names no platform or backend, and 1/model.plan is a TensorRT model" in error.message


@pytest.mark.parametrize(
    ("files", "where", "words"),
    [
        (
            # Without config.pbtxt, only an ONNX model (Triton completes its configuration).
            {
                "densenet__config_dot_pbtxt": "",
                "densenet__1__model_dot_onnx": "",
                "densenet__1__model_dot_plan": "x",
            },
            f"{ROOT}/densenet",
            "has no config.pbtxt and version folder 1 holds no model.onnx",
        ),
        (
            {
                "densenet__config_dot_pbtxt": "",
                "densenet__2__model_dot_onnx": "x",
                "densenet__3__model_dot_onnx": "x",
                "densenet__1__model_dot_onnx": "",
                "densenet__1__other_dot_onnx": "x",
            },
            f"{ROOT}/densenet/1",
            "version folder 1 holds no model.onnx",
        ),
        (
            {
                "densenet__config_dot_pbtxt": "",
                "densenet__model_dot_onnx": "x",
                "densenet__1__model_dot_onnx": "",
            },
            f"{ROOT}/densenet",
            "no version folder",
        ),
        (
            {"densenet__1__model_dot_onnx": "", "densenet__model_dot_onnx": "x"},
            f"{ROOT}/densenet",
            "no version folder: a model's files go in numbered folders",
        ),
        (
            # Triton ignores version folders named 0 or starting with 0.
            {"densenet__1__model_dot_onnx": "", "densenet__01__model_dot_onnx": "x"},
            f"{ROOT}/densenet",
            "no version folder",
        ),
        (
            {"densenet__1__model_dot_onnx": "", "densenet__1__other_dot_onnx": "x"},
            f"{ROOT}/densenet/1",
            "version folder 1 holds no model.onnx",
        ),
        (
            {"config_dot_pbtxt": ONNX_CONFIG},
            f"{ROOT}/config.pbtxt",
            "this folder is one model's: a triton_model's path is the model repository",
        ),
    ],
)
def test_a_repository_of_the_wrong_shape_is_an_error_naming_the_place(
    files: dict[str, str], where: str, words: str
) -> None:
    error = refused(repo(**files))
    assert error.file == where
    assert words in error.message


def test_a_folder_without_models_is_no_repository() -> None:
    files = {f"{ROOT}/README.md": b"models go here"}
    error = refused(files)
    assert error.file == ROOT and "this one has none" in error.message


def test_a_name_other_than_the_folder_is_an_error_on_its_line() -> None:
    error = refused(repo(densenet__config_dot_pbtxt=ONNX_CONFIG.replace('"densenet"', '"dense"')))
    assert (error.file, error.line) == (f"{ROOT}/densenet/config.pbtxt", 1)
    assert "name 'dense' differs from the model's folder 'densenet'" in error.message


def test_a_config_that_is_not_text_format_is_an_error_on_its_line() -> None:
    broken = ONNX_CONFIG.replace("dynamic_batching { }", "dynamic_batching {")
    error = refused(repo(densenet__config_dot_pbtxt=broken))
    assert (error.file, error.line) == (f"{ROOT}/densenet/config.pbtxt", 6)
    assert "never closed by '}'" in error.message
    assert str(error).startswith(f"{ROOT}/densenet/config.pbtxt:6: ")


def test_an_onnx_config_without_inputs_or_outputs_is_completed_from_the_model_with_a_note() -> None:
    no_outputs = "\n".join(line for line in ONNX_CONFIG.splitlines() if "output" not in line)
    repository = read(repo(densenet__config_dot_pbtxt=no_outputs))
    (model,) = repository.models
    assert model.kind == "onnx" and model.served_config is not None
    served = {f.name: f for f in parse(model.served_config.decode())}
    assert served["backend"].first() == "python" and "output" not in served
    assert served["input"].messages[0][0].first() == "data_0"
    (note,) = repository.warnings
    assert note.startswith(f"{ROOT}/densenet/config.pbtxt: lists no output: completed from")
    bare = 'platform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
    (note,) = read(repo(densenet__config_dot_pbtxt=bare)).warnings
    assert "lists no input and no output: completed from the ONNX model" in note


def test_a_model_folder_without_config_holding_model_onnx_is_an_onnx_model_of_its_name() -> None:
    # Azure's Triton sample (azureml-examples cli/endpoints/online/triton/single-model):
    # models/triton/densenet-onnx/1/model.onnx and nothing else.
    files = {f"{ROOT}/densenet-onnx/1/model.onnx": b"onnx bytes"}
    repository = read(files)
    (model,) = repository.models
    assert (model.name, model.kind, model.versions) == ("densenet-onnx", "onnx", ("1",))
    assert model.entries == ("1/model.onnx",)
    assert model.served_config is not None
    served = {f.name: f for f in parse(model.served_config.decode())}
    assert served["name"].first() == "densenet-onnx" and served["backend"].first() == "python"
    # Nothing the model would have to match: the served model.py completes the rest.
    assert not {"input", "output", "max_batch_size", "platform"} & set(served)
    (parameter,) = served["parameters"].messages
    assert parameter[1].messages[0][0].first() == "model.onnx"
    (note,) = repository.warnings
    assert note.startswith(f"{ROOT}/densenet-onnx: has no config.pbtxt: served as an ONNX model")
    assert "max_batch_size 4" in note
    entries = image_entries(
        repository,
        code_dir="/app/t",
        model_copy="/m/triton",
        site_packages="/sp",
        python="3.11",
    )
    found = {e.path: (e.kind, e.target) for e in entries}
    assert found["/app/t/models/densenet-onnx/1/model.onnx"] == (
        "link",
        "/m/triton/densenet-onnx/1/model.onnx",
    )
    assert found["/app/t/models/densenet-onnx/config.pbtxt"][0] == "file"
    assert found["/app/t/models/densenet-onnx/1/model.py"][0] == "file"


def test_a_python_model_folder_without_config_is_still_refused() -> None:
    files = {f"{ROOT}/double/1/model.py": b"class TritonPythonModel: ..."}
    error = refused(files)
    assert error.file == f"{ROOT}/double"
    assert "any other model folder needs a config.pbtxt" in error.message


def test_python_models_and_ensembles_are_served_as_they_are_with_a_warning() -> None:
    ensemble = 'platform: "ensemble"\nensemble_scheduling { step [ ] }\n'
    files = repo(
        double__config_dot_pbtxt=PYTHON_CONFIG,
        double__1__model_dot_py="class TritonPythonModel: ...",
        pipeline__config_dot_pbtxt=ensemble,
        pipeline__1__dot_gitkeep=" ",
        _dot_ipynb_checkpoints__x="ignored",
    )
    repository = read(files)
    kinds = {m.name: (m.kind, m.served_config) for m in repository.models}
    assert kinds == {
        "double": ("python", None),
        "densenet": kinds["densenet"],
        "pipeline": ("ensemble", None),
    }
    (warning,) = repository.warnings
    assert warning.startswith(f"{ROOT}/double/config.pbtxt: Python-backend model 'double' runs")
    assert "numpy==1.26.4" in warning
    del files[f"{ROOT}/double/1/model.py"]
    files[f"{ROOT}/double/1/other.py"] = b""
    assert "version folder 1 holds no model.py" in refused(files).message


def test_gpu_instance_groups_and_accelerators_become_cpu_with_warnings() -> None:
    config = ONNX_CONFIG + (
        "instance_group [ { count: 2, kind: KIND_GPU, gpus: [ 0, 1 ] } ]\n"
        "optimization { execution_accelerators {\n"
        '  gpu_execution_accelerator: [ { name: "tensorrt" } ] } }\n'
    )
    repository = read(repo(densenet__config_dot_pbtxt=config))
    (model,) = repository.models
    assert model.served_config is not None
    served = {f.name: f for f in parse(model.served_config.decode())}
    group = {f.name: f for f in served["instance_group"].messages[0]}
    assert group["kind"].first() == "KIND_CPU" and "gpus" not in group
    assert group["count"].first() == "2" and "optimization" not in served
    assert [w.split(": ", 1)[0] for w in repository.warnings] == [
        f"{ROOT}/densenet/config.pbtxt:7",
        f"{ROOT}/densenet/config.pbtxt:8",
    ]


def test_the_image_holds_the_generated_repository_and_links_to_the_users_files() -> None:
    files = repo(double__config_dot_pbtxt=PYTHON_CONFIG, double__1__model_dot_py="x")
    entries = image_entries(
        read(files),
        code_dir="/app/triton",
        model_copy="/models/m/1/triton",
        site_packages="/opt/venv/lib/python3.11/site-packages",
        python="3.11",
    )
    found = {e.path: (e.kind, e.target) for e in entries}
    pytriton = "/opt/venv/lib/python3.11/site-packages/pytriton/tritonserver"
    assert found["/app/triton/backends/python/triton_python_backend_stub"] == (
        "link",
        f"{pytriton}/python_backend_stubs/3.11/triton_python_backend_stub",
    )
    assert found["/app/triton/backends/python/libtriton_python.so"][1].startswith(pytriton)
    # A Python model is the user's folder; an ONNX model a folder of links and our files.
    assert found["/app/triton/models/double"] == ("link", "/models/m/1/triton/double")
    assert found["/app/triton/models/densenet"] == ("dir", "")
    assert found["/app/triton/models/densenet/labels.txt"] == (
        "link",
        "/models/m/1/triton/densenet/labels.txt",
    )
    assert found["/app/triton/models/densenet/1/model.onnx"] == (
        "link",
        "/models/m/1/triton/densenet/1/model.onnx",
    )
    contents = {e.path: e.content for e in entries if e.kind == "file"}
    assert set(contents) == {
        "/app/triton/models/densenet/config.pbtxt",
        "/app/triton/models/densenet/1/model.py",
    }
    assert contents["/app/triton/models/densenet/1/model.py"] == onnx_model_script()


def test_the_shipped_model_script_is_a_triton_python_model() -> None:
    tree = ast.parse(onnx_model_script())
    (model,) = [n for n in tree.body if isinstance(n, ast.ClassDef)]
    methods = {n.name: n for n in model.body if isinstance(n, ast.FunctionDef)}
    assert model.name == "TritonPythonModel" and {"initialize", "execute"} <= set(methods)
    # Triton's Python backend calls auto_complete_config on the class, before initialize.
    complete = methods["auto_complete_config"]
    assert [d.id for d in complete.decorator_list if isinstance(d, ast.Name)] == ["staticmethod"]


def test_the_environment_is_pinned_and_keyed_by_its_packages_alone() -> None:
    first = triton_environment(ModelSpec("densenet", "1", ROOT, type="triton_model"))
    other = triton_environment(ModelSpec("resnet", "7", "other", type="triton_model"))
    assert first.pip_packages == PACKAGES and "numpy==1.26.4" in PACKAGES
    assert all("==" in package for package in PACKAGES)
    assert (first.name, first.version) == ("densenet-triton", "1")
    assert first.digest == other.digest and first.digest.startswith("sha256:")


def test_the_server_speaks_http_on_8000_from_the_generated_repository() -> None:
    command = server_command(code_dir="/app/t", site_packages="/sp")
    assert command[0] == "/sp/pytriton/tritonserver/bin/tritonserver"
    assert {"--model-repository=/app/t/models", "--http-port=8000", "--allow-grpc=false"} <= set(
        command
    )
