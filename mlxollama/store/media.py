"""Layer media types: Ollama's, plus our own for MLX model files."""

MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"

# Ollama's layer types (§12.3).
MODEL = "application/vnd.ollama.image.model"
PROJECTOR = "application/vnd.ollama.image.projector"
ADAPTER = "application/vnd.ollama.image.adapter"
TEMPLATE = "application/vnd.ollama.image.template"
PROMPT = "application/vnd.ollama.image.prompt"  # very old name for TEMPLATE
SYSTEM = "application/vnd.ollama.image.system"
PARAMS = "application/vnd.ollama.image.params"
MESSAGES = "application/vnd.ollama.image.messages"
LICENSE = "application/vnd.ollama.image.license"
EMBED = "application/vnd.ollama.image.embed"  # obsolete, ignored
DRAFT = "application/vnd.ollama.image.draft"
# Ollama's own MLX format: `name` is a tensor name, not a file path.
OLLAMA_TENSOR = "application/vnd.ollama.image.tensor"
# Ollama's own MLX format: a JSON side file, `name` is its file name.
OLLAMA_JSON = "application/vnd.ollama.image.json"

# Ours. Layers of these types always carry `name` (a relative file path).
MLX_WEIGHTS = "application/vnd.mlxollama.mlx.weights"  # *.safetensors
MLX_CONFIG = "application/vnd.mlxollama.mlx.config"  # config.json
MLX_TOKENIZER = "application/vnd.mlxollama.mlx.tokenizer"  # tokenizer.json, tokenizer_config.json, ...
MLX_FILE = "application/vnd.mlxollama.mlx.file"  # any other side file

MLX_TYPES = frozenset({MLX_WEIGHTS, MLX_CONFIG, MLX_TOKENIZER, MLX_FILE})

# Layer types whose blob is human text (shown by /api/show).
TEXT_TYPES = frozenset({TEMPLATE, PROMPT, SYSTEM, LICENSE})
