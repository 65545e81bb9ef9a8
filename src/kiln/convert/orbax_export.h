// Kiln checkpoint <-> Orbax checkpoint with MaxText's tree. Kiln names already are
// MaxText's tree paths, so this is a rename under `params/params/`, one tensor at a time.
#pragma once

#include <string>

#include "kiln/io/kiln_checkpoint.h"
#include "kiln/io/orbax/orbax_checkpoint.h"

namespace kiln {

// Writes the Kiln checkpoint at `kiln_dir` as an Orbax checkpoint at `orbax_dir`
// (atomically; an existing `orbax_dir` only with `force`): each tensor `name` becomes the
// array `params/params/<name>`, bit for bit. The manifest without its tensor index is kept
// beside `_METADATA` as `kiln_manifest.json` (orbax ignores it), so import restores the
// layout, layer groups and ModelSpec.
void export_kiln_to_orbax(const std::string& kiln_dir, const std::string& orbax_dir,
                          const OrbaxWriteOptions& options, bool force);

// Writes the Orbax checkpoint at `orbax_dir` (any layout resolve_orbax_item_dir accepts) as
// a Kiln checkpoint at `kiln_dir` (atomically; an existing one only with `force`). Arrays
// under `params/params/` become tensors named by the rest of their path; others (e.g. the
// step, optimizer state) are skipped. Layout information comes from `kiln_manifest.json`;
// without it the checkpoint must be unscanned (no `decoder/layers/` arrays), else Error.
void import_orbax_to_kiln(const std::string& orbax_dir, const std::string& kiln_dir,
                          const KilnCheckpointWriter::Options& options, bool force);

}  // namespace kiln
