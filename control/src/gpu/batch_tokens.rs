//! `max_batch_tokens = "auto"`: TEI's `--max-batch-tokens` sized from the free VRAM of the
//! instance's GPU when it is created. A pure rule; the manager calls it after placement.
//!
//! Source: TEI's launcher (`router/src/main.rs`, `--max-batch-tokens`, default 16384) says the
//! number is "the total amount of potential tokens within a batch", "should be the largest
//! possible until the model is compute bound", and that "since the actual memory overhead
//! depends on the model implementation, text-embeddings-inference cannot infer this number
//! automatically". So this rule is ours, and deliberately conservative:
//!
//! - budget = the GPU's free VRAM after what is placed on it, minus the instance's own
//!   `vram_mb` estimate (its weights come out of the same memory);
//! - tokens = budget in MiB × [`TOKENS_PER_MIB`] (8: 128 KiB of activations per batched token,
//!   several times what a BERT-large-class encoder keeps live per token in fp16), rounded down
//!   to a multiple of [`STEP`];
//! - at least [`FLOOR`] (512, the input length of BERT-class models, so one full input still
//!   fits) and at most TEI's default [`TEI_DEFAULT`] (16384): "auto" only ever lowers TEI's
//!   default on a GPU that is short of memory, it never raises it.
//!
//! Without a known GPU (NVML unavailable, or no GPU chosen) TEI's default is used, with a
//! warning: the choice made here, rather than refusing, since a CPU build of TEI is valid.

use crate::store::BatchSizing;

/// TEI's own default for `--max-batch-tokens`.
pub const TEI_DEFAULT: u32 = 16_384;
/// The smallest number "auto" gives.
pub const FLOOR: u32 = 512;
/// Tokens per MiB of budget (128 KiB per token).
pub const TOKENS_PER_MIB: u64 = 8;
/// What the number is rounded down to a multiple of.
pub const STEP: u32 = 256;

const MIB: u64 = 1024 * 1024;

/// Sizes "auto" for `gpu` (`(id, free bytes after what is placed)`, `None` when no GPU is
/// known or its memory cannot be read) with `reserved_bytes` of the instance's own estimate;
/// the warning says why TEI's default or the floor was used.
pub fn size(gpu: Option<(u32, Option<u64>)>, reserved_bytes: u64) -> (BatchSizing, Option<String>) {
    let reserved_mb = (reserved_bytes > 0).then_some(reserved_bytes / MIB);
    let Some((gpu_id, Some(free))) = gpu else {
        let why = match gpu {
            Some((id, None)) => format!("GPU {id}'s free memory cannot be read"),
            _ => "no known GPU for it (NVML unavailable or none chosen)".to_string(),
        };
        let sizing = BatchSizing {
            tokens: TEI_DEFAULT,
            gpu_id: gpu.map(|(id, _)| id),
            free_vram_mb: None,
            reserved_mb,
            rule: format!("{why}: TEI's default {TEI_DEFAULT}"),
        };
        let warning = format!("max_batch_tokens = \"auto\": {}", sizing.rule);
        return (sizing, Some(warning));
    };
    let free_mb = free / MIB;
    let budget_mb = free.saturating_sub(reserved_bytes) / MIB;
    let raw = budget_mb.saturating_mul(TOKENS_PER_MIB);
    let stepped = (raw.min(u64::from(u32::MAX)) as u32) / STEP * STEP;
    let tokens = stepped.clamp(FLOOR, TEI_DEFAULT);
    let rule = format!(
        "{budget_mb} MiB free on GPU {gpu_id} after placed instances and this one's estimate \
         x {TOKENS_PER_MIB} tokens/MiB = {raw}, rounded down to a multiple of {STEP}, within \
         {FLOOR}..={TEI_DEFAULT}: {tokens}"
    );
    let warning = (stepped < FLOOR).then(|| {
        format!(
            "max_batch_tokens = \"auto\": only {budget_mb} MiB free on GPU {gpu_id} for batches; \
             using the floor of {FLOOR} tokens (TEI may run out of memory)"
        )
    });
    let sizing = BatchSizing {
        tokens,
        gpu_id: Some(gpu_id),
        free_vram_mb: Some(free_mb),
        reserved_mb,
        rule,
    };
    (sizing, warning)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proportional_to_free_vram_between_the_floor_and_teis_default() {
        // 1 GiB free, nothing reserved: 1024 x 8 = 8192.
        let (s, w) = size(Some((0, Some(1024 * MIB))), 0);
        assert_eq!(
            (s.tokens, s.gpu_id, s.free_vram_mb),
            (8192, Some(0), Some(1024))
        );
        assert!(w.is_none());
        assert!(s.rule.contains("= 8192"), "{}", s.rule);
        // The instance's own estimate is kept out: 1 GiB - 512 MiB = 512 MiB -> 4096.
        let (s, _) = size(Some((1, Some(1024 * MIB))), 512 * MIB);
        assert_eq!((s.tokens, s.reserved_mb), (4096, Some(512)));
        // Rounded down to a multiple of 256: 100 MiB -> 800 -> 768.
        assert_eq!(size(Some((0, Some(100 * MIB))), 0).0.tokens, 768);
        // Capped at TEI's default on a big GPU.
        let (s, w) = size(Some((0, Some(80 * 1024 * MIB))), 0);
        assert_eq!(s.tokens, TEI_DEFAULT);
        assert!(w.is_none());
        // The floor, with a warning, when short of memory.
        let (s, w) = size(Some((0, Some(10 * MIB))), 0);
        assert_eq!(s.tokens, FLOOR);
        assert!(w.is_some_and(|w| w.contains("floor")));
        let (s, _) = size(Some((0, Some(10 * MIB))), 64 * MIB);
        assert_eq!(s.tokens, FLOOR, "an estimate above the free memory");
    }

    #[test]
    fn specs_say_auto_or_a_number_and_the_state_file_reads_it_back() {
        use crate::store::{InstanceSpec, MaxBatchTokens};
        let auto: InstanceSpec = toml::from_str("max_batch_tokens = \"auto\"").expect("auto");
        assert_eq!(auto.max_batch_tokens, Some(MaxBatchTokens::Auto));
        let text = toml::to_string(&auto).expect("to toml");
        assert_eq!(toml::from_str::<InstanceSpec>(&text).expect("back"), auto);
        let n: InstanceSpec = serde_json::from_str(r#"{"max_batch_tokens": 2048}"#).expect("n");
        assert_eq!(n.max_batch_tokens, Some(MaxBatchTokens::Tokens(2048)));
        assert_eq!(
            serde_json::to_value(&n).expect("json")["max_batch_tokens"],
            2048
        );
        for bad in [r#""lots""#, "-1", "5000000000", "1.5"] {
            let e =
                serde_json::from_str::<InstanceSpec>(&format!(r#"{{"max_batch_tokens": {bad}}}"#))
                    .expect_err(bad)
                    .to_string();
            assert!(e.contains("tokens"), "{bad}: {e}");
        }
    }

    #[test]
    fn without_a_known_gpu_teis_default_with_a_warning() {
        let (s, w) = size(None, 0);
        assert_eq!(
            (s.tokens, s.gpu_id, s.free_vram_mb),
            (TEI_DEFAULT, None, None)
        );
        assert!(w.is_some_and(|w| w.contains("no known GPU") && w.contains("16384")));
        let (s, w) = size(Some((2, None)), 0);
        assert_eq!((s.tokens, s.gpu_id), (TEI_DEFAULT, Some(2)));
        assert!(w.is_some_and(|w| w.contains("cannot be read")));
    }
}
