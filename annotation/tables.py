"""Short names for the SQLAlchemy Core tables behind the SQLModel classes (the store's queries use Core)."""
from annotation.schema import (Annotator, CandidateRow, Case, Correction, Feedback, ModelVersion, Ranking, Rating,
                               Review, Run, Scan, SchemaInfo, TrainingRound, TrainingRoundFeedback)

T_ANN, T_SCAN, T_CASE, T_MV, T_RUN = (Annotator.__table__, Scan.__table__, Case.__table__, ModelVersion.__table__,
                                      Run.__table__)
T_CAND, T_FB, T_RANK, T_RATE, T_CORR, T_REV = (CandidateRow.__table__, Feedback.__table__, Ranking.__table__,
                                               Rating.__table__, Correction.__table__, Review.__table__)
T_ROUND, T_ROUND_FB, T_INFO = TrainingRound.__table__, TrainingRoundFeedback.__table__, SchemaInfo.__table__
