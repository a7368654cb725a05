terraform {
  # 1.9: validation rules that refer to other input variables (weights fit uses
  # model_weights_gb and vram_headroom). No providers: the module only computes values.
  required_version = ">= 1.9"
}
