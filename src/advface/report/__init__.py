"""advface.report: the scientific report of a run directory (docs/run_dir.md).

`load.load_run` reads a run into `RunData`; `stats` aggregates cells; `figures`, `tables` and
`text` turn those numbers into plots, tables and prose (`extras`: the Interpretability and
Defences sections, from RUN_DIR/interpret/ and RUN_DIR/defences/); `html.write_html` and
`notebook.write_notebook` render them; `build.build_report` does all of it;
`browser.check_page` opens the HTML in headless Chromium; `fixtures.make_fake_run` fabricates a
run directory for tests. Submodules are imported explicitly (matplotlib is not loaded here).
"""
