namespace PeftSharp.Training.Recipes;

/// <summary>What `peft train` does with a key of LLaMA-Factory's or HF TrainingArguments' YAML.</summary>
public enum KeyUse
{
    /// <summary>Read and acted on.</summary>
    Honoured,
    /// <summary>Accepted with one warning line saying why it has no effect here.</summary>
    Ignored,
    /// <summary>An error when set to anything but its neutral value: accepting it silently would change the result.</summary>
    Refused,
}

public sealed record RecipeKey(string Name, KeyUse Use, string Reason = "");

/// <summary>
/// Every key of LLaMA-Factory's model/data/finetuning/training/generating arguments and of HF
/// (Seq2Seq)TrainingArguments, as data: honoured, ignored with a reason, or refused with a reason. Method-specific
/// keys are honoured by the methods themselves (<see cref="TrainConfig.ValidKeys"/>); this table is the generic rest.
/// </summary>
public static class RecipeKeys
{
    /// <summary>Generic keys TrainConfig reads (on top of the method keys it already knew).</summary>
    public static readonly IReadOnlyList<string> Honoured =
    [
        // data
        "dataset_dir", "eval_dataset", "max_samples", "mix_strategy", "interleave_probs", "mask_history",
        "default_system", "enable_thinking", "preserve_thinking", "tool_format",
        // training
        "eval_strategy", "evaluation_strategy", "save_strategy", "logging_strategy", "logging_first_step",
        "load_best_model_at_end", "metric_for_best_model", "greater_is_better", "lr_scheduler_kwargs", "neftune_noise_alpha",
        "loraplus_lr_embedding", "eval_delay", "eval_on_start", "disable_shuffling", "train_sampling_strategy",
        // freeze tuning
        "freeze_trainable_layers", "freeze_trainable_modules", "freeze_extra_modules", "use_llama_pro",
    ];

    static readonly (string Reason, string[] Keys)[] IgnoredGroups =
    [
        ("PeftSharp builds the architectures itself and runs no code from model folders", ["trust_remote_code"]),
        ("attention always uses torch's scaled_dot_product_attention here", ["flash_attn", "shift_attn"]),
        ("there is no dataset cache (the data is read and tokenized in process each run)",
            ["overwrite_cache", "preprocessing_num_workers", "preprocessing_batch_size", "data_shared_file_system", "buffer_size"]),
        ("data loading runs in the training process (no worker processes)",
            ["dataloader_num_workers", "dataloader_pin_memory", "dataloader_persistent_workers", "dataloader_prefetch_factor"]),
        ("data-parallel runs start under mpirun here (docs/distributed.md); torch.distributed, Ray and TPU launch settings do not apply",
            ["ddp_timeout", "ddp_backend", "ddp_find_unused_parameters", "ddp_bucket_cap_mb", "ddp_broadcast_buffers", "local_rank",
             "average_tokens_across_devices", "save_on_each_node", "log_on_each_node", "log_level_replica", "ray_num_workers",
             "ray_init_kwargs", "ray_run_name", "ray_storage_path", "ray_storage_filesystem", "resources_per_worker", "placement_strategy",
             "ray_scope", "master_addr", "master_port", "tpu_num_cores", "tpu_metrics_debug", "mp_parameters", "accelerator_config",
             "parallelism_config", "split_batches", "dispatch_batches", "hyper_parallel_args", "hyper_parallel_cp_size", "use_hyper_parallel"]),
        ("ZeRO/FSDP shard state across processes; here every process (or mpirun rank) holds the whole model, which trains the same",
            ["deepspeed", "fsdp", "fsdp_config", "fsdp_min_num_params", "fsdp_transformer_layer_cls_to_wrap"]),
        ("other experiment trackers are not built in (report_to: tensorboard is; trainer_log.jsonl and trainer_state.json hold the same numbers)",
            ["run_name", "project", "trackio_space_id", "use_swanlab", "swanlab_project", "swanlab_workspace",
             "swanlab_run_name", "swanlab_mode", "swanlab_api_key", "swanlab_logdir", "swanlab_lark_webhook_url", "swanlab_lark_secret"]),
        ("nothing is downloaded or uploaded (offline); local folders are read as they are",
            ["push_to_hub", "hub_model_id", "hub_strategy", "hub_token", "hub_private_repo", "hub_always_push", "hub_revision",
             "push_to_hub_model_id", "push_to_hub_organization", "push_to_hub_token", "hf_hub_token", "ms_hub_token", "om_hub_token",
             "cache_dir", "model_revision"]),
        ("kernel and compiler switches change speed, not results; PeftSharp's kernels are fixed",
            ["enable_liger_kernel", "use_liger_kernel", "liger_kernel_config", "use_unsloth", "use_unsloth_gc", "torch_compile",
             "torch_compile_backend", "torch_compile_mode", "jit_mode_eval", "tf32", "use_v1_kernels", "torch_empty_cache_steps",
             "use_reentrant_gc", "gradient_checkpointing_kwargs", "half_precision_backend", "fp16_backend", "fp16_opt_level"]),
        ("LLaMA-Factory turns gradient checkpointing on by default; here it is off unless gradient_checkpointing: true (memory, not results)",
            ["disable_gradient_checkpointing"]),
        ("norms, the output head and the loss already compute in float32 here", ["upcast_layernorm", "upcast_lmhead_output"]),
        ("the device comes from --device", ["use_cpu", "no_cuda", "use_mps_device", "device_map", "quantization_device_map", "low_cpu_mem_usage", "offload_folder"]),
        ("the tokenizer is always tokenizer.json (one implementation)", ["use_fast_tokenizer"]),
        ("console output is PeftSharp's own (use --json for machine-readable output)",
            ["disable_tqdm", "log_level", "logging_nan_inf_filter", "print_param_status", "include_tokens_per_second",
             "include_num_input_tokens_seen", "include_effective_tokens_per_second", "skip_memory_metrics", "debug"]),
        ("checkpoints are always safetensors with the optimizer and RNG state (resumable)",
            ["save_safetensors", "save_only_model", "restore_callback_states_from_checkpoint"]),
        ("evaluation reports loss and perplexity (and accuracy for classification); generation-based metrics are not computed",
            ["predict_with_generate", "generation_max_length", "generation_num_beams", "generation_config", "eval_num_beams",
             "compute_accuracy", "prediction_loss_only", "eval_accumulation_steps", "eval_do_concat_batches", "batch_eval_metrics",
             "include_inputs_for_metrics", "include_for_metrics", "use_legacy_prediction_loop", "eval_use_gather_object",
             "eval_on_each_dataset", "label_names", "past_index", "remove_unused_columns", "length_column_name", "sortish_sampler"]),
        ("generation settings are used by `peft generate` / `peft chat`, not by training",
            ["do_sample", "temperature", "top_p", "top_k", "num_beams", "max_length", "max_new_tokens", "repetition_penalty",
             "length_penalty", "skip_special_tokens", "infer_backend", "infer_dtype", "use_kv_cache", "use_cache"]),
        ("used by `llamafactory-cli export`; PeftSharp has `peft merge` and `peft quantize`",
            ["export_dir", "export_size", "export_device", "export_quantization_bit", "export_quantization_dataset",
             "export_quantization_nsamples", "export_quantization_maxlen", "export_legacy_format", "export_hub_model_id"]),
        ("inference engines (vLLM, SGLang, KTransformers) are not used for training",
            ["vllm_maxlen", "vllm_gpu_util", "vllm_enforce_eager", "vllm_max_lora_rank", "vllm_config", "sglang_maxlen",
             "sglang_mem_fraction", "sglang_tp_size", "sglang_config", "sglang_lora_backend", "kt_cpu_activation", "kt_weight_path",
             "kt_non_expert_weight_path", "kt_expert_checkpoint_path", "kt_use_lora_experts", "kt_lora_expert_num",
             "kt_lora_expert_intermediate_size", "kt_optimize_rule", "cpu_infer", "chunk_size", "kt_maxlen", "kt_use_cuda_graph",
             "kt_mode", "kt_force_think", "kt_config"]),
        ("PeftSharp trains text models; image, video and audio processors are not used",
            ["image_max_pixels", "image_min_pixels", "image_do_pan_and_scan", "crop_to_patches", "video_max_pixels", "video_min_pixels",
             "video_fps", "video_maxlen", "use_audio_in_video", "audio_sampling_rate", "media_dir", "freeze_vision_tower",
             "freeze_multi_modal_projector", "freeze_language_model"]),
        ("only used by the preference stages (dpo, kto, rm, ppo), which PeftSharp does not have",
            ["pref_beta", "pref_ftx", "pref_bco_weight", "pref_loss", "dpo_label_smoothing", "kto_chosen_weight", "kto_rejected_weight",
             "simpo_gamma", "ppo_buffer_size", "ppo_epochs", "ppo_score_norm", "ppo_target", "ppo_whiten_rewards", "ref_model",
             "ref_model_adapters", "ref_model_quantization_bit", "reward_model", "reward_model_adapters", "reward_model_quantization_bit",
             "reward_model_type", "ld_alpha"]),
        ("only used with the optimizer it configures (GaLore, APOLLO, BAdam, OFT), which is off",
            ["galore_target", "galore_rank", "galore_update_interval", "galore_scale", "galore_proj_type", "galore_layerwise",
             "apollo_target", "apollo_rank", "apollo_update_interval", "apollo_scale", "apollo_proj", "apollo_proj_type",
             "apollo_scale_type", "apollo_layerwise", "apollo_scale_front", "badam_mode", "badam_start_block", "badam_switch_mode",
             "badam_switch_interval", "badam_update_ratio", "badam_mask_mode", "badam_verbose", "optim_target_modules",
             "oft_rank", "oft_block_size", "oft_target", "module_dropout", "pissa_iter", "asft_alpha", "eaft_alpha",
             "init_special_tokens", "megatron_bridge_args"]),
        ("profiling is not built in", ["enable_torch_profiler", "profiler_output_dir", "profiler_wait_steps", "profiler_warmup_steps",
            "profiler_active_steps", "profiler_repeat", "profiler_record_shapes", "profiler_profile_memory", "profiler_with_stack", "profile_modules",
            "fp8_backend", "fp8_enable_fsdp_float8_all_gather"]),
        ("full determinism is the default here (seeded data order, dropout and init)", ["full_determinism"]),
        ("the batch size is what per_device_train_batch_size says", ["auto_find_batch_size"]),
        ("evaluation runs in the training precision", ["bf16_full_eval", "fp16_full_eval"]),
        ("float16 mixed precision is a GPU mode; this run trains in float32 (bf16: true computes in bfloat16 on CPUs that have it)", ["fp16"]),
        ("there are no mixture-of-experts models here", ["moe_aux_loss_coef"]),
        ("evaluation runs whenever there is an eval set (val_size or eval_dataset), at the end and per eval_strategy", ["do_eval"]),
        ("padding never counts in the loss here (labels are -100 on pads)", ["ignore_pad_token_for_loss"]),
    ];

    static readonly (string Reason, string[] Keys)[] RefusedGroups =
    [
        ("this precision mode is not available; use bf16: true (bfloat16 compute, float32 master weights)", ["pure_bf16", "fp8"]),
        ("this optimizer is not available; remove the key to train with AdamW",
            ["use_galore", "use_apollo", "use_badam", "use_adam_mini", "use_muon", "optim_args", "adafactor"]),
        ("this loss is not available; remove the key to train with cross-entropy",
            ["use_dft_loss", "use_asft_loss", "use_eaft_loss", "label_smoothing_factor"]),
        ("this model surgery is not available", ["mixture_of_depths", "rope_scaling", "resize_vocab", "add_tokens",
            "add_special_tokens", "new_special_tokens_config", "train_from_scratch", "split_special_tokens", "use_kt",
            "pissa_init", "pissa_convert", "create_new_adapter", "adapter_folder", "use_mca", "use_megatron_bridge"]),
        ("this data pipeline option is not available", ["streaming", "neat_packing", "tokenized_path", "group_by_length",
            "dataloader_drop_last", "ignore_data_skip", "per_gpu_train_batch_size", "per_gpu_eval_batch_size", "data_seed"]),
        ("PeftSharp trains; use `peft eval` or `peft generate` for prediction", ["do_predict"]),
        ("early stopping is not available; set max_steps", ["early_stopping_steps"]),
    ];

    static readonly Dictionary<string, RecipeKey> Table = Build();

    static Dictionary<string, RecipeKey> Build()
    {
        var t = new Dictionary<string, RecipeKey>();
        foreach (var k in Honoured) t[k] = new(k, KeyUse.Honoured);
        foreach (var (reason, keys) in IgnoredGroups) foreach (var k in keys) t[k] = new(k, KeyUse.Ignored, reason);
        foreach (var (reason, keys) in RefusedGroups) foreach (var k in keys) t[k] = new(k, KeyUse.Refused, reason);
        return t;
    }

    /// <summary>The whole generic table (method keys excluded), for docs and tests.</summary>
    public static IReadOnlyCollection<RecipeKey> All => Table.Values;

    /// <summary>The entry for a key: the keys TrainConfig and the methods read are honoured (a method's own key wins over this table).</summary>
    public static RecipeKey? Find(string key) =>
        TrainConfig.KnownKeys.Contains(key) ? new(key, KeyUse.Honoured) : Table.GetValueOrDefault(key);

    static IEnumerable<string> KnownNames => Table.Keys.Concat(TrainConfig.KnownKeys);

    /// <summary>A value that means "off" (false, 0, none, null, empty), which makes ignored and refused keys harmless.</summary>
    public static bool IsNeutral(string? value) =>
        value is null or "" or "null" or "~" or "none" or "None" or "[]" or "{}" || value.Equals("false", StringComparison.OrdinalIgnoreCase)
        || (double.TryParse(value, System.Globalization.NumberStyles.Float, System.Globalization.CultureInfo.InvariantCulture, out var d) && d == 0);

    /// <summary>
    /// Checks the keys of a recipe: all unknown keys in one error with a "did you mean", a refused key set to a
    /// non-neutral value is an error naming it, an ignored key set to a non-neutral value gives one warning line.
    /// </summary>
    public static List<string> Check(IReadOnlyList<(string Key, string? Value, string Where)> entries, string source)
    {
        var unknown = entries.Where(e => Find(e.Key) is null).ToList();
        if (unknown.Count > 0)
            throw new PeftConfigException($"{source}: unknown key{(unknown.Count > 1 ? "s" : "")} " + string.Join("; ", unknown.Select(e =>
                $"'{e.Key}' ({e.Where}{(DidYouMean(e.Key) is { } m ? $"; did you mean '{m}'?" : "")})")));
        var warnings = new List<string>();
        foreach (var (key, value, where) in entries)
        {
            var k = Find(key)!;
            if (k.Use == KeyUse.Refused && !IsNeutral(value))
                throw new PeftConfigException($"{source}: '{key}: {value}' ({where}) is not supported: {k.Reason}");
            if (k.Use == KeyUse.Ignored && !IsNeutral(value))
                warnings.Add($"{source}: ignoring '{key}' ({where}): {k.Reason}");
        }
        return warnings;
    }

    /// <summary>The closest known key within a third of its length in edits, else null.</summary>
    public static string? DidYouMean(string key)
    {
        var best = KnownNames.Select(n => (Name: n, D: Distance(key, n))).OrderBy(x => x.D).ThenBy(x => x.Name, StringComparer.Ordinal).First();
        return best.D <= Math.Max(2, key.Length / 3) ? best.Name : null;
    }

    /// <summary>Levenshtein distance (edits to turn a into b).</summary>
    public static int Distance(string a, string b)
    {
        var prev = new int[b.Length + 1];
        var cur = new int[b.Length + 1];
        for (int j = 0; j <= b.Length; j++) prev[j] = j;
        for (int i = 1; i <= a.Length; i++)
        {
            cur[0] = i;
            for (int j = 1; j <= b.Length; j++)
                cur[j] = Math.Min(Math.Min(cur[j - 1] + 1, prev[j] + 1), prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
            (prev, cur) = (cur, prev);
        }
        return prev[b.Length];
    }
}
