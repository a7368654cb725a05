"""Span attribute names: OpenTelemetry's GenAI and HTTP conventions where they exist, and
`magistral.*` for what the conventions do not cover (tenancy, admission, routing, Ray placement)."""

from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as _gen_ai
from opentelemetry.semconv.attributes import error_attributes as _error
from opentelemetry.semconv.attributes import http_attributes as _http

# HTTP server span
HTTP_METHOD = _http.HTTP_REQUEST_METHOD
HTTP_ROUTE = _http.HTTP_ROUTE
HTTP_STATUS = _http.HTTP_RESPONSE_STATUS_CODE
ERROR_TYPE = _error.ERROR_TYPE

# GenAI conventions
OPERATION = _gen_ai.GEN_AI_OPERATION_NAME
PROVIDER = _gen_ai.GEN_AI_PROVIDER_NAME
REQUEST_MODEL = _gen_ai.GEN_AI_REQUEST_MODEL
RESPONSE_MODEL = _gen_ai.GEN_AI_RESPONSE_MODEL
RESPONSE_ID = _gen_ai.GEN_AI_RESPONSE_ID
REQUEST_MAX_TOKENS = _gen_ai.GEN_AI_REQUEST_MAX_TOKENS
REQUEST_STREAM = _gen_ai.GEN_AI_REQUEST_STREAM
REQUEST_TEMPERATURE = _gen_ai.GEN_AI_REQUEST_TEMPERATURE
REQUEST_TOP_P = _gen_ai.GEN_AI_REQUEST_TOP_P
FINISH_REASONS = _gen_ai.GEN_AI_RESPONSE_FINISH_REASONS
INPUT_TOKENS = _gen_ai.GEN_AI_USAGE_INPUT_TOKENS
OUTPUT_TOKENS = _gen_ai.GEN_AI_USAGE_OUTPUT_TOKENS
REASONING_TOKENS = _gen_ai.GEN_AI_USAGE_REASONING_OUTPUT_TOKENS
TIME_TO_FIRST_CHUNK = _gen_ai.GEN_AI_RESPONSE_TIME_TO_FIRST_CHUNK
INPUT_MESSAGES = _gen_ai.GEN_AI_INPUT_MESSAGES  # only with trace_content: true
OUTPUT_MESSAGES = _gen_ai.GEN_AI_OUTPUT_MESSAGES
PROVIDER_MISTRAL = _gen_ai.GenAiProviderNameValues.MISTRAL_AI.value

# Tenancy and billing
TENANT = "magistral.tenant.id"
REQUEST_ID = "magistral.request.id"  # the client's x-request-id (or the proxy's)
REQUEST_TIER = "magistral.request.tier"  # interactive | standard | batch: the priority it ran at
LEDGER_KEY = "magistral.ledger.request_key"  # the usage_ledger row of this request
COST_USD = "magistral.cost_usd"
OUTCOME = "magistral.outcome"  # completed | cancelled | failed | refused

# Admission
PROMPT_COUNTED = "magistral.admission.prompt_counted"  # exact count ran (else the bound decided)
PROMPT_BOUND = "magistral.admission.prompt_tokens_bound"
CONTEXT_CAP = "magistral.admission.context_cap"
CONTEXT_LIMIT = "magistral.admission.context_limit"
GRANTED_MAX_TOKENS = "magistral.admission.max_tokens"
CLAMPED_FROM = "magistral.admission.clamped_from"
QUOTA_DECISION = "magistral.quota.decision"  # grant | clamp | refuse | unavailable
QUOTA_LIMIT = "magistral.quota.limit"  # the limit that refused or clamped
QUOTA_CLAMPED_FROM = "magistral.quota.clamped_from"
# The fair admission queue (fairness.enabled)
QUEUE_DECISION = "magistral.queue.decision"  # admit | queue | shed | bypass (no prediction yet)
QUEUE_WAIT_S = "magistral.queue.wait_s"  # held in the ingress before dispatch (or before shed)
QUEUE_EXPECTED_WAIT_S = "magistral.queue.expected_wait_s"  # at arrival, from the work ahead
QUEUE_ALLOWED_WAIT_S = "magistral.queue.allowed_wait_s"  # its bounded wait
QUEUE_SHED_STATUS = "magistral.queue.shed_status"  # 429 (over its fair share) | 503 (fleet overloaded)
QUEUE_RETRY_AFTER_S = "magistral.queue.retry_after_s"

# Routing
POOL = "magistral.pool"
ROUTING_REASON = "magistral.routing.reason"  # predicted | preferred | spilled | all_saturated
ROUTING_DETAIL = "magistral.routing.detail"
CANDIDATE_POOLS = "magistral.routing.candidate_pools"
POOL_OUTSTANDING = "magistral.routing.candidate_pools.outstanding_tokens"
CANDIDATE_REPLICAS = "magistral.routing.candidate_replicas"  # best first
REPLICA_SCORES = "magistral.routing.candidate_replicas.outstanding_tokens"
REPLICA_REQUESTS = "magistral.routing.candidate_replicas.ongoing_requests"
ROUTING_ATTEMPTS = "magistral.routing.attempts"
CHOSEN_REPLICA = "magistral.routing.chosen_replica"
# Predicted placement (router/routing/predict.py): every candidate of every pool, best first, with
# its predicted TTFT (s) and TPOT (s), and the correction factor the chosen one's GPU class had;
# the TTFT the request really got (from dispatch) is on the request's span.
PREDICTED_REPLICAS = "magistral.routing.predicted.replicas"
PREDICTED_POOLS = "magistral.routing.predicted.pools"
PREDICTED_TTFT = "magistral.routing.predicted.ttft_s"
PREDICTED_TPOT = "magistral.routing.predicted.tpot_s"
PREDICTED_MEETS = "magistral.routing.predicted.meets"
PREDICTED_CACHED = "magistral.routing.predicted.prefix_cached_tokens"  # of its prompt, held there (router's memory)
LIKELY_OUTPUT = "magistral.routing.predicted.likely_output_tokens"
TTFT_CORRECTION = "magistral.routing.predicted.ttft_correction"
ACTUAL_TTFT = "magistral.routing.actual_ttft_s"

# Where the request ran
REPLICA_ID = "magistral.replica.id"  # Serve replica id (the x-replica header)
NODE_ID = "magistral.ray.node_id"
ACCELERATOR = "magistral.accelerator.type"
