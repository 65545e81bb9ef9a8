// Kiln checkpoint <-> Orbax checkpoint with MaxText's tree: Kiln names are MaxText's tree
// paths (under `params/params/`); llama-shaped models also get MaxText's array shapes and
// values (maxtext_llama.h), others keep Kiln's. One tensor at a time, bit for bit back.
#pragma once

#include <string>

#include "kiln/io/kiln_checkpoint.h"
#include "kiln/io/orbax/orbax_checkpoint.h"

namespace kiln {

// Writes the Kiln checkpoint at `kiln_dir` as an Orbax checkpoint at `orbax_dir`
// (atomically; an existing `orbax_dir` only with `force`): each tensor `name` becomes the
// array `params/params/<name>`, plus MaxText's `step` (0). When the manifest's
// source_config is llama-shaped (MaxTextLlamaLayout::for_config) arrays take MaxText's
// shapes, layer axis, RoPE order and query scale, with side arrays that make the scale
// exactly reversible; otherwise they are Kiln's bytes. The manifest without its tensor
// index, plus the per-tensor MaxText record, is kept beside `_METADATA` as
// `kiln_manifest.json` (orbax ignores it), so import restores layout, groups and ModelSpec.
void export_kiln_to_orbax(const std::string& kiln_dir, const std::string& orbax_dir,
                          const OrbaxWriteOptions& options, bool force);

// Writes the Orbax checkpoint at `orbax_dir` (any layout resolve_orbax_item_dir accepts) as
// a Kiln checkpoint at `kiln_dir` (atomically; an existing one only with `force`). Arrays
// under `params/params/` become tensors named by the rest of their path; others (e.g. the
// step, optimizer state) are skipped. Layout information and MaxText's transforms (undone
// bit for bit) come from `kiln_manifest.json`; without it arrays are taken as Kiln's and the
// checkpoint must be unscanned (no `decoder/layers/` arrays), else Error.
void import_orbax_to_kiln(const std::string& orbax_dir, const std::string& kiln_dir,
                          const KilnCheckpointWriter::Options& options, bool force);

}  // namespace kiln
