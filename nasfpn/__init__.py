"""nasfpn: search feature-pyramid (neck) topologies for object detectors, and use what you find."""
from .genotype import ExtraLevels, Genotype, GenotypeError, Node, load_genotype, reference_names, save_genotype
from .neck import Neck, build_neck
from .space import SearchSpace, SpaceError, load_space

__all__ = ["ExtraLevels", "Genotype", "GenotypeError", "Node", "Neck", "build_neck", "load_genotype",
           "reference_names", "save_genotype", "SearchSpace", "SpaceError", "load_space"]
__version__ = "0.1.0"
