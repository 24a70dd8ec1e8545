"""The toy world both toys share: coloured shapes where control is visible and measurable (:mod:`.shapes`), the
caption tokenizers' vocabulary (:mod:`.tokenizers`), and what both toys' pretraining shares (:mod:`.pretraining`).

The toys themselves are each family's: the toy SDXL (:mod:`lllite.sdxl.toy`) and the toy Anima
(:mod:`lllite.anima.toy`); ``lllite.load_pipeline("toy")`` loads the pretrained toy SDXL and
``lllite.load_pipeline("toy", model_family="anima")`` the toy Anima.
"""

#: The name that means a family's pretrained toy, wherever a model's name or path is asked for.
TOY = "toy"
