"""advface.data: everything between files on disk and the records/splits the rest uses.

Modules (imported directly, so that ``advface data info`` never pays for importing torch):

- ``records``    ImageRecord and the ``Identity/Identity_0001.jpg`` key convention
- ``images``     strict decoding, tensor conversion, quantisation, lossless PNG, crop presets
- ``folder``     scan any ``identity/image`` folder into records, listing every skipped file
- ``protocols``  LFW pairs/people/names readers
- ``download``   resumable, checksum-verified downloads; official LFW file table
- ``lfw``        open_lfw: folder or archive (extracted once into the cache), validation
- ``splits``     reproducible closed-set (gallery/probes/distractors) and person splits
- ``synthetic``  a tiny LFW look-alike for tests
"""
