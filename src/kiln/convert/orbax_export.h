// Kiln checkpoint <-> Orbax checkpoint in MaxText's tree (maxtext_tree.h: names, shapes,
// layer stacking and values as MaxText's converters write them), or in Kiln's own tree on
// request. One layer at a time; bit for bit back with Kiln's sidecar.
#pragma once

#include <string>
#include <vector>

#include "kiln/convert/kiln_tensor_set.h"
#include "kiln/io/kiln_checkpoint.h"
#include "kiln/io/orbax/orbax_checkpoint.h"

namespace kiln {

// Which tree an Orbax export writes.
struct OrbaxExportOptions {
  // "maxtext": MaxText's tree, shapes and values for the model's family (MaxTextTree);
  // a family MaxText lacks is an Error. "plain": each Kiln tensor `name` as the array
  // `params/params/<name>` in Kiln's shapes (an Orbax checkpoint MaxText cannot load).
  std::string tree = "maxtext";
  // MaxText's layout: "scanned", "unscanned", or "" for the Kiln checkpoint's own.
  std::string maxtext_layout;
  // Gemma: MaxText's vocab_size, the rows of its embedding (zeros appended, or rows cut off
  // and kept in a Kiln side array); 0: maxtext_default_vocab (256128 for the stock Gemma 1
  // and 2 vocab, 262144 for Gemma 3's).
  int64_t maxtext_vocab = 0;
};

// Writes the Kiln checkpoint at `kiln_dir` as an Orbax checkpoint at `orbax_dir`
// (atomically; an existing `orbax_dir` only with `force`) with MaxText's `step` (0) beside
// the parameters. In MaxText's tree each array is assembled from the Kiln tensors of its
// layers (any Kiln layout), one layer at a time: the top-level arrays first (a large one
// MaxText transposes or rescales in blocks of source rows), then decoder layer after decoder
// layer, so each source tensor is read once, in the order the files hold them; with side arrays
// (listed in no orbax metadata) holding per-element residuals that make MaxText's value changes
// exactly reversible. The manifest without its tensor index, the Kiln tensors' shapes and layer
// axes, and the MaxText tree record are kept beside `_METADATA` as `kiln_manifest.json` (orbax
// ignores it), so import restores the Kiln checkpoint bit for bit.
void export_kiln_to_orbax(const std::string& kiln_dir, const std::string& orbax_dir,
                          const OrbaxWriteOptions& options, bool force,
                          const OrbaxExportOptions& export_options = {});
// The same from any KilnTensorSet, e.g. a HuggingFace folder seen as the Kiln checkpoint it
// converts to (open_hf_as_kiln): `kiln convert --format orbax` streams the model straight
// from its source files, without an intermediate checkpoint. Errors name source.where().
void export_to_orbax(const KilnTensorSet& source, const std::string& orbax_dir,
                     const OrbaxWriteOptions& options, bool force,
                     const OrbaxExportOptions& export_options = {});

// Writes the Orbax checkpoint at `orbax_dir` (any layout resolve_orbax_item_dir accepts) as
// a Kiln checkpoint at `kiln_dir` (atomically; an existing one only with `force`). With
// Kiln's sidecar, the tree it records is inverted bit for bit. Without it (a checkpoint
// MaxText wrote), `config` (the model's config.json; required then unless the arrays are a
// plain unscanned tree) names the family: its MaxText tree (scanned when
// `params/params/decoder/layers/` arrays exist) is inverted by arithmetic, every array's
// shape checked (Error naming the array), into an unscanned Kiln checkpoint. Other arrays
// (the step, optimizer state) are skipped.
void import_orbax_to_kiln(const std::string& orbax_dir, const std::string& kiln_dir,
                          const KilnCheckpointWriter::Options& options, bool force,
                          const Json& config = Json::object());

// What `kiln inspect` and `verify` report about an Orbax checkpoint's MaxText tree: the
// family, layout, and each value change that loses information without Kiln's residuals
// ("lossless" when Kiln's residuals are present). Empty when the checkpoint is not a
// MaxText tree Kiln knows.
std::vector<std::string> describe_maxtext_tree(const std::string& orbax_dir,
                                               const Json& config = Json::object());

// The same lines for a Kiln checkpoint imported from a MaxText tree without Kiln's sidecar
// (its manifest's "provenance"); empty for any other manifest.
std::vector<std::string> maxtext_provenance(const Json& manifest);

}  // namespace kiln
