"""`python -m hwocr.export run=RUN_DIR output=DIR` (conf/export.yaml; keys: hwocr/export/config.py)."""

import logging
import sys

import hydra

from hwocr.errors import USER_ERRORS
from hwocr.export.command import export
from hwocr.export.config import ExportConfig, register_schema

log = logging.getLogger("hwocr.export")
register_schema()


@hydra.main(version_base="1.3", config_path="../../conf", config_name="export")
def main(composed) -> None:
    from omegaconf import OmegaConf
    from omegaconf.errors import MissingMandatoryValue

    try:
        cfg: ExportConfig = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ExportConfig), composed))
        print(f"exported to {export(cfg)}")
    except MissingMandatoryValue as error:
        log.error("%s is required: python -m hwocr.export run=RUN_DIR output=DIR", error.full_key)
        sys.exit(2)
    except (*USER_ERRORS, FileNotFoundError) as error:
        log.error("%s", error)
        sys.exit(2)


if __name__ == "__main__":
    main()
