"""nasfpn: search feature-pyramid (neck) topologies for object detectors, and use what you find."""
from .genotype import ExtraLevels, Genotype, GenotypeError, Node, load_genotype, reference_names, save_genotype
from .neck import Neck, build_neck

__all__ = ["ExtraLevels", "Genotype", "GenotypeError", "Node", "Neck", "build_neck", "load_genotype",
           "reference_names", "save_genotype"]
__version__ = "0.1.0"
